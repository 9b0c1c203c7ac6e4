"""The studio: a local web page to compose scenes by hand (`scenecomp-studio`; see `scenecomp.studio.app`)."""
