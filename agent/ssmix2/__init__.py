"""SS-MIX2 standardized storage: layout, message validation, mapping to records, and the tree reader."""

from agent.ssmix2.layout import IN_SCOPE, SsmixName, parse_name
from agent.ssmix2.reader import FileOutcome, Status, read_file, read_tree

__all__ = ["IN_SCOPE", "FileOutcome", "SsmixName", "Status", "parse_name", "read_file", "read_tree"]
