"""HS desk model package: nomenclature, label texts, datasets, towers and the joint model."""
