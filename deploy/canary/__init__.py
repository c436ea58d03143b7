"""The canary verdict (verdict.py), shared by both deploy targets."""
