"""What goes into the wheel (the rest of the metadata is in pyproject.toml).

The library is every package under `merging/` (found, so that new subpackages need no edit here).
The Streamlit app stays at the top of the repository (app.py, pages/, .streamlit/config.toml), as
does the demo zoo; they ship as the data of one small package, `mergescope_app`, whose folder in
the repository is the repository's root. Installed, they sit together in site-packages/mergescope_app/,
where `mergescope dashboard` finds them (merging/cli.py). Only the files named below are taken
from the root: tests, scripts, docs and benchmarks stay out of the wheel.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

APP_MODULES = {"app"}  # the only Python module of the repository's root that belongs to the app

APP_FILES = [
    "pages/*.py",
    "pages/**/*.py",
    ".streamlit/config.toml",
    "zoo/manifest.json",
    "zoo/seed_study.json",
    "zoo/*/*.json",
    "zoo/*/*.safetensors",
    "zoo/seeds/*/manifest.json",
    "zoo/seeds/*/*/*.json",
    "zoo/seeds/*/*/*.safetensors",
]


class BuildPy(build_py):
    """Takes only app.py from the root folder: the root's other .py files (setup.py) are not the app."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "mergescope_app":
            modules = [m for m in modules if m[1] in APP_MODULES]
        return modules


setup(
    cmdclass={"build_py": BuildPy},
    packages=find_packages(include=["merging", "merging.*"]) + ["mergescope_app"],
    package_dir={"mergescope_app": "."},
    package_data={"mergescope_app": APP_FILES},
    include_package_data=False,
)
