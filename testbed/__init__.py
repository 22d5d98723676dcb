"""The privacy-friendly CPU testbed: DCGAN faces of nobody as training set, and identity-quality measures."""
