"""scenecomp: layer-based sequential scene composition.

A background generator paints a canvas from noise; a foreground generator then
adds objects one at a time, each placed by a mask and a category. Inference
imports neither Hydra nor Lightning.
"""

from scenecomp.compose import Composer, CompositionError, Scene
from scenecomp.layout import Layout, LayoutError

__all__ = ["Composer", "CompositionError", "Layout", "LayoutError", "Scene"]
__version__ = "0.1.0"
