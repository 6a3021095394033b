"""Build shim: everything is in setup.cfg, except shipping ``nnunet_blob.pth`` into site-packages.

The .pth file registers our trainer folder in ``nnUNet_extTrainer`` at interpreter start-up, so nnU-Net's
``-tr`` lookup finds our trainers right after ``pip install`` (see nnunet_blob/_autoregister.py).
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "nnunet_blob.pth"


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": build_py_with_pth})
