"""Supply-chain artifacts of an image: its SBOM (from the closure) and its cosign signature.

Pure: bytes in, bytes out. Attaching them to a registry is ``publish.attach``'s; to an OCI
layout, ``sinks``'. The SBOM libraries are imported only when an SBOM is made.
"""
