"""nerfstudio registration of the ``da3gs-data`` dataparser.

Kept apart from the method configs: nerfstudio discovers dataparsers while its datamanager
module is still importing, so this module must import only the dataparser itself.
"""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from da3gs.ns_plugin.dataparser import Da3gsDataParserConfig

da3gs_dataparser = DataParserSpecification(
    config=Da3gsDataParserConfig(),
    description="Image folder (poses optional): cameras and seed Gaussians from a da3gs model.")
