"""Benchmarks: realistic closures in the real Nix store and a harness comparing ociforge with
shell pipelines on the same data (see benchmarks/README.md). Never imported by ociforge."""
