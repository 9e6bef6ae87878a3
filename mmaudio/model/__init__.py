"""The MM-DiT flow network and flow-matching math."""
