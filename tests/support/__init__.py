"""Test support: building real MMARs, NIfTI volumes with known geometry, and a live server process."""
