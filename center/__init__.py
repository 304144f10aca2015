"""center role (see DESIGN.md §1)."""
