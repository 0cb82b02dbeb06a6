"""Image-to-image translation annotators: depth, sketch (edges), normal, pose and segmentation maps."""
