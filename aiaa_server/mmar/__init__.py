"""Clara MMARs: the config_aiaa.json schema, building components by name, loading and the registry."""
