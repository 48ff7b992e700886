"""Generator/critic presets and their layers: no losses, devices or distribution in here."""
