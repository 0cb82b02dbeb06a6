"""Image-to-image translation annotators: depth, sketch (edges), normal, pose and segmentation maps.

``Annotators`` (annotators.py) holds the ones a job needs; one module per map. The five translation
tasks (tasks/translation.py) turn a map into a pair, photo → map or map → photo."""
