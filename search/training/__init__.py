"""Training (offline): encoder heads, style adapters, aesthetic scorer, ranked DPO; never imported by serving."""
