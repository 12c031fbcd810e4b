"""Rule files: parsing, validation and the loaded, immutable policy."""
