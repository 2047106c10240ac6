"""Generated from proto/otad/v1/*.proto by proto/generate.py (make proto); do not edit."""
