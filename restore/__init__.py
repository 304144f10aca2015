"""restore role (see DESIGN.md §1)."""
