"""Alliance instruments (WAI-SR, SRS, ORS, seed dimensions, rupture/repair): structure and scoring (pure)."""
