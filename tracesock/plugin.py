"""pytest plugin (entry point ``pytest11``): replay fixtures and markers live here."""
