"""media role (see DESIGN.md §1)."""
