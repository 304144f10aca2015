"""research role (see DESIGN.md §1)."""
