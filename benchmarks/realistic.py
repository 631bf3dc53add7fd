"""The ``realistic`` benchmark closure: about 1 GB and 26k files in about 190 store paths.

Shaped like a CI builder image's closure: a glibc every package refers to, a toolchain with a
few huge binaries (libLLVM, clang, cc1plus: 50-200 MB each), a hundred-odd C libraries (a
quarter split into a ``-dev`` output) whose first few are shared by many and the rest a long
tail, thirty-odd Python packages with deep module trees, four applications at the top and one
environment over them (the root). It has relative and absolute symlinks (``.so`` chains,
buildEnv-style trees), executables, file names past 100 characters, self-references
(pkg-config ``prefix=``) and identical files in different store paths (licenses, vendored
modules, shared data). Sizes are at scale 1; ``scale`` multiplies byte and file totals and the
number of libraries and Python packages (with small floors).
"""

from __future__ import annotations

from benchmarks.plan import ClosurePlan, Entry, PackageBuilder, Planner

REALISTIC_BYTES = 1_000_000_000
GENERIC_LIBRARIES = 115
PYTHON_PACKAGES = 32
PYTHON_PACKAGE_FILES = 13_000

# Real library names first: the earliest are the most shared (see Planner.pick).
_LIBRARY_TEXT = (
    "zlib openssl ncurses libffi readline sqlite xz bzip2 expat libxml2 pcre2 curl libssh2"
    " nghttp2 brotli zstd lz4 libuv icu4c gmp mpfr libidn2 libunistring gnutls nettle p11-kit"
    " libtasn1 krb5 keyutils e2fsprogs util-linux dbus glib libxcrypt attr acl libcap"
    " libseccomp json-c libyaml protobuf grpc abseil-cpp re2 c-ares boost fmt spdlog libevent"
    " libedit gdbm db libpng libjpeg-turbo libtiff libwebp freetype fontconfig harfbuzz cairo"
    " pixman"
)
_LIBRARY_NAMES = tuple(_LIBRARY_TEXT.split())
_PYTHON_TEXT = (
    "requests urllib3 certifi idna charset-normalizer six setuptools pip wheel attrs pyyaml"
    " jinja2 markupsafe click packaging pyparsing numpy cryptography cffi pycparser pydantic"
    " typing-extensions botocore boto3 s3transfer jmespath python-dateutil pytz rich pygments"
    " markdown-it-py mdurl"
)
_PYTHON_NAMES = tuple(_PYTHON_TEXT.split())
_LICENSES = ("MIT", "BSD-3-Clause", "Apache-2.0", "GPL-2.0", "LGPL-2.1")
_TRIPLE = "x86_64-unknown-linux-gnu"


class Realistic:
    """Plans the realistic closure; one method per kind of package."""

    def __init__(self, scale: float, seed: int) -> None:
        self.p = Planner("realistic", scale, seed)
        self.elastic: list[Entry] = []  # sizes rescaled at the end to hit the byte target
        self.generic: list[int] = []
        self.devs: list[int] = []
        self.pythons: list[int] = []

    def plan(self) -> ClosurePlan:
        p = self.p
        self.glibc = self._glibc()
        self.gcc_lib = self._simple_lib("gcc-12.3.0-lib", "libstdc++.so.6.0.30", 2_400_000)
        for i in range(p.count(GENERIC_LIBRARIES, minimum=3)):
            self._library(i)
        self.llvm = self._llvm()
        self.clang = self._clang()
        self.gcc = self._gcc()
        self.python = self._python()
        self.perl = self._perl()
        counts = self._python_file_counts()
        for i, n in enumerate(counts):
            self._python_package(i, n)
        # Libraries nobody uses would fall out of the closure: the applications link them.
        orphans = self._unreferenced(self.generic)
        roots = [
            self._devtool(orphans[0::2]),
            self._webapp(orphans[1::2]),
            self._python_env(),
            self._cc_wrapper(),
        ]
        self._rescale_elastic()
        self._environment(roots)
        return p.plan()

    # --- base -----------------------------------------------------------------------------

    def _glibc(self) -> int:
        p, b = self.p, PackageBuilder("glibc-2.37-8")
        libs = {"libc.so.6": 2_300_000, "libm.so.6": 950_000, "ld-linux-x86-64.so.2": 230_000}
        libs |= {"libresolv.so.2": 70_000, "libpthread.so.0": 20_000, "libdl.so.2": 15_000}
        for lib, size in libs.items():
            b.file(f"lib/{lib}", "bin", p.size(size), f"glibc/{lib}", executable=True)
        headers = p.tree("include", 25, 3)
        p.sources(b, headers, p.count(250), ".h", "c", 5_000)
        for i in range(p.count(250)):
            name = f"{p.ident(1).upper()}-{i}.so"
            b.file(f"lib/gconv/{name}", "bin", p.lognormal(30_000, 0.8, 4_000, 400_000), name)
        for i in range(p.count(300)):
            locale = f"share/i18n/locales/{p.ident(1)}_{i:03d}"
            self._doc(b, locale, (9_000, 0.7, 500, 90_000), f"loc{i}")
        for i in range(p.count(40)):
            b.file(f"share/locale/l{i:02d}/LC_MESSAGES/libc.mo", "doc", 120_000, f"libc.mo/{i}")
        b.text(
            "bin/ldd",
            '#!/bin/sh\nexec @out@/lib/ld-linux-x86-64.so.2 --list "$@"\n',
            executable=True,
        )
        return p.add(b)

    def _simple_lib(self, name: str, so: str, size: int) -> int:
        p, b = self.p, PackageBuilder(name)
        prefix = f"\0RPATH={b.ref(self.glibc)}/lib:@out@/lib\0"
        b.file(f"lib/{so}", "bin", p.size(size), f"{name}/{so}", executable=True, prefix=prefix)
        b.link(f"lib/{so.split('.so', maxsplit=1)[0]}.so", so)
        self._docs(b, name)
        return p.add(b)

    def _doc(
        self, b: PackageBuilder, path: str, size: tuple[int, float, int, int], key: str
    ) -> None:
        """A text file whose size is drawn from ``lognormal(*size)``."""
        b.file(path, "doc", self.p.lognormal(*size), key)

    def _docs(self, b: PackageBuilder, name: str) -> None:
        p = self.p
        self._doc(b, f"share/doc/{name}/README.md", (4_000, 0.8, 200, 60_000), f"{name}/readme")
        self._doc(b, f"share/doc/{name}/NEWS", (20_000, 1.0, 200, 400_000), f"{name}/news")
        # The same license text in many store paths: hard-linkable duplicates.
        license = p.rng.choice(_LICENSES)
        b.file(
            f"share/doc/{name}/COPYING",
            "doc",
            11_000 + 1_000 * _LICENSES.index(license),
            f"license/{license}",
        )

    # --- the long tail of C libraries -----------------------------------------------------

    def _library(self, i: int) -> None:
        p = self.p
        name = _LIBRARY_NAMES[i] if i < len(_LIBRARY_NAMES) else f"lib{p.ident(1)}{i}"
        stem = name.removeprefix("lib").replace("-", "_")
        version = p.version()
        b = PackageBuilder(f"{name}-{version}")
        deps = [self.glibc] + ([self.gcc_lib] if p.rng.random() < 0.6 else [])
        deps += p.pick(self.generic, p.rng.choice((0, 1, 1, 2, 2, 3, 4, 6)))
        rpath = ":".join(f"{b.ref(d)}/lib" for d in deps)
        major = version.split(".")[0]
        so = f"lib{stem}.so.{version}"
        weight = p.lognormal(1_500_000, 1.2, 40_000, 40_000_000)
        prefix = f"\0RPATH={rpath}:@out@/lib\0"
        self.elastic.append(
            b.file(f"lib/{so}", "bin", weight, f"{name}/{so}", executable=True, prefix=prefix)
        )
        b.link(f"lib/lib{stem}.so.{major}", so)
        self._library_extras(b, i, name, stem, prefix)
        split = p.rng.random() < 0.25
        dev = PackageBuilder(f"{name}-{version}-dev") if split else b
        self._headers_and_pkgconfig(dev, name, stem, so if not split else None)
        index = p.add(b)
        self.generic.append(index)
        if split:
            dev.link(f"lib/lib{stem}.so", f"{dev.ref(index)}/lib/lib{stem}.so.{major}")
            self.devs.append(p.add(dev))

    def _library_extras(self, b: PackageBuilder, i: int, name: str, stem: str, prefix: str) -> None:
        """Tools, documentation, translations and (now and then) a vendored data file."""
        p = self.p
        if p.rng.random() < 0.3:
            for _ in range(p.rng.randint(1, 4)):
                tool = f"bin/{stem}-{p.ident(1)}"
                size = p.lognormal(150_000, 1.0, 8_000, 3_000_000)
                if not b.has(tool):
                    b.file(tool, "bin", size, f"{name}/{tool}", executable=True, prefix=prefix)
        self._docs(b, name)
        man = p.rng.choice((0, 0, 2, 5, 12))
        p.sources(b, ["share/man/man3"], man, ".3", "doc", 6_000)
        if p.rng.random() < 0.1:
            for lang in range(30):
                mo = f"share/locale/l{lang:02d}/LC_MESSAGES/{stem}.mo"
                self._doc(b, mo, (30_000, 0.5, 2_000, 200_000), f"{name}/mo{lang}")
        if i % 23 == 5:
            # The same data file vendored by several libraries (hard-linkable, 1.5 MB at scale 1).
            b.file(
                f"share/{stem}/unicode/UnicodeData-15.0.0.txt",
                "doc",
                p.size(1_500_000),
                "dup/unicode-data",
            )

    def _headers_and_pkgconfig(
        self, b: PackageBuilder, name: str, stem: str, so: str | None
    ) -> None:
        p = self.p
        if so is not None:
            b.link(f"lib/lib{stem}.so", so.rsplit(".", 2)[0])
        headers = p.tree(f"include/{stem}", p.rng.randint(0, 6), 3)
        p.sources(b, headers, p.lognormal(18, 1.0, 1, 400), ".h", "c", 7_000)
        b.text(
            f"lib/pkgconfig/{stem}.pc",
            f"prefix=@out@\nincludedir=${{prefix}}/include\nlibdir=${{prefix}}/lib\n\n"
            f"Name: {name}\nLibs: -L${{libdir}} -l{stem}\nCflags: -I${{includedir}}\n",
        )

    # --- the toolchain: a few huge binaries ----------------------------------------------

    def _big(self, b: PackageBuilder, path: str, size: int, deps: list[int]) -> None:
        rpath = ":".join(f"{b.ref(d)}/lib" for d in deps)
        prefix = f"\0RPATH={rpath}:@out@/lib\0"
        b.file(path, "bin", size, f"{b.name}/{path}", executable=True, prefix=prefix)

    def _llvm(self) -> int:
        p, b = self.p, PackageBuilder("llvm-16.0.6-lib")
        core = self.generic[:4]
        self._big(b, "lib/libLLVM-16.so", p.size(170_000_000), [self.glibc, self.gcc_lib, *core])
        b.link("lib/libLLVM.so", "libLLVM-16.so")
        b.link("lib/libLLVM-16.0.6.so", "libLLVM-16.so")
        lib = p.add(b)
        dev = PackageBuilder("llvm-16.0.6-dev")
        dirs = p.tree("include/llvm", 120, 4) + p.tree("include/llvm-c", 3, 1)
        p.sources(dev, dirs, p.count(1_500), ".h", "c", 9_000)
        dev.link("lib/libLLVM.so", f"{dev.ref(lib)}/lib/libLLVM-16.so")
        self.devs.append(p.add(dev))
        return lib

    def _clang(self) -> int:
        p, b = self.p, PackageBuilder("clang-16.0.6")
        self._big(b, "bin/clang-16", p.size(95_000_000), [self.llvm, self.glibc, self.gcc_lib])
        self._big(b, "lib/libclang-cpp.so.16", p.size(40_000_000), [self.llvm, self.glibc])
        for alias in ("clang", "clang++", "clang-cpp", "cc", "c++"):
            b.link(f"bin/{alias}", "clang-16")
        p.sources(b, p.tree("lib/clang/16/include", 8, 2), p.count(300), ".h", "c", 12_000)
        return p.add(b)

    def _gcc(self) -> int:
        p, b = self.p, PackageBuilder("gcc-12.3.0")
        libexec = f"libexec/gcc/{_TRIPLE}/12.3.0"
        deps = [self.glibc, self.gcc_lib, *self.generic[:1]]
        self._big(b, f"{libexec}/cc1plus", p.size(60_000_000), deps)
        self._big(b, f"{libexec}/cc1", p.size(30_000_000), deps)
        for tool in ("gcc", "g++", "cpp", "gcov"):
            self._big(b, f"bin/{tool}", p.size(1_200_000), deps)
            b.link(f"bin/{_TRIPLE}-{tool}", tool)
        p.sources(b, p.tree("include/c++/12.3.0", 60, 5), p.count(800), "", "c", 14_000)
        plugin = p.tree(f"lib/gcc/{_TRIPLE}/12.3.0/plugin/include", 20, 3)
        p.sources(b, plugin, p.count(400), ".h", "c", 8_000)
        self._docs(b, "gcc")
        return p.add(b)

    def _python(self) -> int:
        p, b = self.p, PackageBuilder("python3-3.11.6")
        deps = [self.glibc, *self.generic[:9]]
        self._big(b, "lib/libpython3.11.so.1.0", p.size(25_000_000), deps)
        b.link("lib/libpython3.11.so", "libpython3.11.so.1.0")
        self._big(b, "bin/python3.11", p.size(16_000), [self.glibc])
        for alias in ("python3", "python"):
            b.link(f"bin/{alias}", "python3.11")
        p.sources(b, p.tree("lib/python3.11", 150, 4), p.count(2_000), ".py", "py", 9_000)
        for i in range(p.count(70)):
            ext = f"lib/python3.11/lib-dynload/_{p.ident(1)}{i}.cpython-311-{_TRIPLE}.so"
            self._big(b, ext, p.lognormal(90_000, 0.9, 10_000, 2_000_000), deps[:3])
        self._docs(b, "python3")
        return p.add(b)

    def _perl(self) -> int:
        p, b = self.p, PackageBuilder("perl-5.38.0")
        self._big(b, "bin/perl5.38.0", p.size(3_500_000), [self.glibc])
        b.link("bin/perl", "perl5.38.0")
        dirs = p.tree("lib/perl5/5.38.0", 120, 4)
        p.sources(b, dirs, p.count(1_500), ".pm", "doc", 12_000)
        return p.add(b)

    # --- Python packages: many small files in deep trees ---------------------------------

    def _python_file_counts(self) -> list[int]:
        """Files per package: heavy-tailed, summing to the scaled total."""
        p = self.p
        n = p.count(PYTHON_PACKAGES, minimum=2)
        raw = [p.lognormal(100, 1.1, 5, 5_000) for _ in range(n)]
        total = p.count(PYTHON_PACKAGE_FILES, minimum=4 * n)
        return [max(4, round(r * total / sum(raw))) for r in raw]

    def _python_package(self, i: int, files: int) -> None:
        p = self.p
        name = _PYTHON_NAMES[i] if i < len(_PYTHON_NAMES) else f"{p.ident(1)}-{i}"
        module, version = name.replace("-", "_"), p.version()
        b = PackageBuilder(f"python3.11-{name}-{version}")
        python = b.ref(self.python)
        for dep in p.pick(self.pythons, p.rng.choice((0, 1, 1, 2, 3))):
            b.ref(dep)
        sp = "lib/python3.11/site-packages"
        dirs = p.tree(f"{sp}/{module}", max(0, files // 15), 4)
        for d in dirs:
            b.file(f"{d}/__init__.py", "py", p.lognormal(600, 1.5, 0, 20_000), f"{b.name}/{d}")
        p.sources(b, dirs, max(0, files - len(dirs)), ".py", "py", 6_000)
        if p.rng.random() < 0.3:
            lib = p.rng.choice(self.generic)
            ext = f"{sp}/{module}/_speedups.cpython-311-{_TRIPLE}.so"
            self._big(b, ext, p.lognormal(400_000, 1.0, 20_000, 8_000_000), [self.glibc, lib])
        if p.rng.random() < 0.25:
            # Vendored copies: byte-identical across packages.
            b.file(f"{sp}/{module}/_vendor/six.py", "py", 34_549, "dup/six.py")
            b.file(f"{sp}/{module}/_vendor/typing_extensions.py", "py", 111_000, "dup/te.py")
        info = f"{sp}/{module}-{version}.dist-info"
        self._doc(b, f"{info}/METADATA", (5_000, 1.0, 500, 80_000), f"{b.name}/meta")
        b.file(f"{info}/RECORD", "doc", 80 * files, f"{b.name}/record")
        b.text(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: bdist_wheel (0.41.2)\n"
            "Root-Is-Purelib: true\nTag: py3-none-any\n",
        )
        b.text(f"{info}/top_level.txt", f"{module}\n")
        b.file(f"{info}/LICENSE", "doc", 11_000, f"license/{p.rng.choice(_LICENSES)}")
        if p.rng.random() < 0.3:
            script = (
                f"#!{python}/bin/python3.11\nimport sys\n"
                f"from {module}.cli import main\nsys.exit(main())\n"
            )
            b.text(f"bin/{name}", script, executable=True)
        self.pythons.append(p.add(b))

    # --- the roots: applications and the environment over them ---------------------------

    def _app(self, name: str, binary: str, weight: int, deps: list[int]) -> PackageBuilder:
        b = PackageBuilder(name)
        rpath = ":".join(f"{b.ref(d)}/lib" for d in deps)
        prefix = f"\0RPATH={rpath}:@out@/lib\0"
        self.elastic.append(
            b.file(
                f"bin/{binary}", "bin", weight, f"{name}/{binary}", executable=True, prefix=prefix
            )
        )
        self._docs(b, name)
        return b

    def _unreferenced(self, candidates: list[int]) -> list[int]:
        used = {d for package in self.p.packages for d in package.deps}
        return [c for c in candidates if c not in used]

    def _devtool(self, extra: list[int]) -> int:
        p = self.p
        deps = [self.glibc, self.gcc_lib, self.python, *p.pick(self.generic, 12)]
        deps += [d for d in extra if d not in deps]
        b = self._app("devtool-3.2.1", "devtool", 25_000_000, deps)
        b.text(
            "bin/devtool-report",
            f'#!{b.ref(self.perl)}/bin/perl\nprint "report\\n";\n',
            executable=True,
        )
        for i in range(p.count(20)):
            plugin = f"lib/devtool/plugins/{p.ident(2)}_{i}.so"
            self._big(b, plugin, p.lognormal(500_000, 0.8, 20_000, 5_000_000), [self.glibc])
        p.sources(b, p.tree("share/devtool/templates", 40, 5), p.count(500), ".tmpl", "doc", 3_000)
        return p.add(b)

    def _webapp(self, extra: list[int]) -> int:
        p = self.p
        deps = [self.glibc, *self.generic[:3], *p.pick(self.generic, 6)]
        deps += [d for d in extra if d not in deps]
        b = self._app("webapp-server-1.4.0", "webapp-server", 35_000_000, deps)
        p.sources(b, p.tree("share/webapp/static/assets", 30, 4), p.count(400), ".js", "py", 8_000)
        p.sources(b, p.tree("share/webapp/static/css", 5, 2), p.count(100), ".css", "c", 5_000)
        b.text(
            "etc/webapp/webapp.conf", "listen = 0.0.0.0:8080\nstatic = @out@/share/webapp/static\n"
        )
        return p.add(b)

    def _python_env(self) -> int:
        """A buildEnv: a tree of absolute symlinks into the Python packages."""
        b = PackageBuilder("python3-3.11.6-env")
        python = b.ref(self.python)
        for alias in ("python3", "python3.11", "python"):
            b.link(f"bin/{alias}", f"{python}/bin/{alias}")
        for index in self.pythons:
            spec = self.p.packages[index]
            ref = b.ref(index)
            for entry in spec.entries:
                path = str(entry[1])
                top = "/".join(path.split("/")[:4])
                if (
                    path.startswith("lib/python3.11/site-packages/")
                    and path == top + "/__init__.py"
                ):
                    b.link(top, f"{ref}/{top}")
                elif path.startswith("bin/"):
                    b.link(path, f"{ref}/{path}")
        return self.p.add(b)

    def _cc_wrapper(self) -> int:
        b = PackageBuilder("gcc-wrapper-12.3.0")
        gcc, glibc, clang = b.ref(self.gcc), b.ref(self.glibc), b.ref(self.clang)
        for tool in ("gcc", "g++"):
            script = (
                f'#!/bin/sh\nexec {gcc}/bin/{tool} -B{glibc}/lib -idirafter {glibc}/include "$@"\n'
            )
            b.text(f"bin/{tool}", script, executable=True)
        b.link("bin/cc", "gcc")
        b.link("bin/c++", "g++")
        b.link("bin/clang", f"{clang}/bin/clang")
        flags = "".join(f"-isystem {b.ref(dev)}/include\n" for dev in self.devs)
        b.text("nix-support/cc-cflags", flags)
        return self.p.add(b)

    def _environment(self, roots: list[int]) -> None:
        """The one root the benchmark builds: bin/ links to every application."""
        b = PackageBuilder("benchmark-env")
        for root in roots:
            ref = b.ref(root)
            for entry in self.p.packages[root].entries:
                if str(entry[1]).startswith("bin/") and not b.has(str(entry[1])):
                    b.link(str(entry[1]), f"{ref}/{entry[1]}")
        self.p.add(b)

    def _rescale_elastic(self) -> None:
        """Scale the libraries' and applications' binaries so the closure hits its byte target."""
        fixed = self.p.plan().stats().bytes - sum(int(e[3]) for e in self.elastic)
        target = REALISTIC_BYTES * self.p.scale
        factor = max(0.05, (target - fixed) / sum(int(e[3]) for e in self.elastic))
        for entry in self.elastic:
            entry[3] = max(4_096, int(int(entry[3]) * factor))


def realistic(scale: float, seed: int) -> ClosurePlan:
    return Realistic(scale, seed).plan()
