"""The paper's three federations: one folder per dataset (its published site split, its converter, its metric)."""
