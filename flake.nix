{
  description = "ociforge: build and push OCI images of Nix closures in one streaming pass";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      pythonDeps = ps: with ps; [ httpx click tqdm zstandard cryptography pydantic ];
      testDeps = ps: with ps; [ pytest pytest-timeout mypy ];
    in
    {
      packages = forAllSystems (pkgs: rec {
        ociforge = pkgs.python3Packages.buildPythonApplication {
          pname = "ociforge";
          version = "0.1.0";
          pyproject = true;
          src = ./.;
          build-system = [ pkgs.python3Packages.setuptools ];
          dependencies = pythonDeps pkgs.python3Packages;
          # ociforge runs `nix` to read closures; the user's own nix is the right one, so it is
          # not wrapped in. The test suite needs a registry and a store: it runs outside the build.
          doCheck = false;
          meta.mainProgram = "ociforge";
        };
        default = ociforge;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.system}.ociforge}/bin/ociforge";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: pythonDeps ps ++ testDeps ps))
            pkgs.ruff
            pkgs.skopeo
            pkgs.umoci
            pkgs.pigz
            pkgs.zstd
          ];
        };
      });
    };
}
