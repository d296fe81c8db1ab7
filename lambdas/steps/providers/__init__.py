"""Cloud provider actions; importing a module registers its actions."""
