"""MONAI dictionary transforms of the bundle: targets that some losses need besides the label."""
