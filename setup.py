"""The native piece of the packet path (``townhall.sfu._fastsend``), built when it can be.

Everything else about the package is in pyproject.toml. Without a C compiler or the Python
headers the build skips the extension and townhall forwards in pure Python.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("townhall.sfu._fastsend",
                             ["src/townhall/sfu/_fastsend.c", "src/townhall/sfu/_twcc.c",
                              "src/townhall/sfu/_read.c", "src/townhall/sfu/_audio.c",
                              "src/townhall/sfu/_fields.c"],
                             depends=["src/townhall/sfu/_twcc.h", "src/townhall/sfu/_read.h",
                                      "src/townhall/sfu/_bytes.h", "src/townhall/sfu/_audio.h",
                                      "src/townhall/sfu/_fields.h"],
                             libraries=["m"],
                             # the estimate and the audio tick must round as
                             # congestion.py and speaker.py do: no fused multiply-adds
                             extra_compile_args=["-ffp-contract=off"], optional=True)])
