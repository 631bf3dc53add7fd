{
  description = "ociforge example: a dev shell as a GitLab CI job image, no nixpkgs needed";

  # A real project writes `devShells.default = pkgs.mkShell { packages = [ ... ]; }` (see the
  # README). This example builds without any input so it works offline on a machine with only
  # Nix and Debian's busybox-static (/bin/busybox), with the same shape a mkShell has: a
  # derivation whose builder is bash, whose inputs are the tools, and whose variables
  # (PATH, GREETING, shellHook) are what `nix print-dev-env` reports.
  outputs = { self }:
    let
      system = "x86_64-linux";
      busybox = builtins.derivation {
        name = "busybox-static";
        inherit system;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" ''
          mkdir -p $out/bin
          cp /bin/busybox $out/bin/busybox
          for applet in sh ash env ls cat echo id whoami wc head grep sed mkdir touch rm uname test; do
            ln -s busybox $out/bin/$applet
          done
        '' ];
      };
      # bash for the shellHook entrypoint (--entrypoint-hook), from Debian's bash-static.
      bash = builtins.derivation {
        name = "bash-static";
        inherit system;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" "mkdir -p $out/bin && cp /bin/bash-static $out/bin/bash" ];
      };
      # What nixpkgs' cacert provides: a CA bundle at etc/ssl/certs/ca-bundle.crt, which
      # ociforge's essentials link at /etc/ssl/certs and point SSL_CERT_FILE & co. at. Copied
      # from Debian's ca-certificates here (with nixpkgs: add pkgs.cacert to the packages).
      cacert = builtins.derivation {
        name = "cacert-debian";
        inherit system;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" ''
          mkdir -p $out/etc/ssl/certs
          cp /etc/ssl/certs/ca-certificates.crt $out/etc/ssl/certs/ca-bundle.crt
        '' ];
      };
      # A project tool: prints $GREETING, which only the dev shell's environment sets.
      greet = builtins.derivation {
        name = "greet-1.0";
        inherit system;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" ''
          mkdir -p $out/bin
          printf '#!%s/bin/sh\necho "''${GREETING:?GREETING is not set}"\n' ${busybox} > $out/bin/greet
          chmod 555 $out/bin/greet
        '' ];
      };
      devshell = builtins.derivation {
        name = "example-devshell";
        inherit system;
        # `nix print-dev-env` needs a bash builder and declared outputs (Nix 2.8).
        builder = "/bin/bash";
        outputs = [ "out" ];
        buildInputs = [ busybox greet cacert bash ];
        # stdenv's setup would build PATH from the inputs; without stdenv we write it.
        PATH = "${greet}/bin:${busybox}/bin:${bash}/bin";
        GREETING = "Hello from the example dev shell";
        # Runs only with --entrypoint-hook (GitLab reads no rc file): prefer variables.
        shellHook = ''
          echo "entering the example dev shell"
          export HOOK_RAN=yes
        '';
        # Like mkShell, record the inputs in the output so the image's closure holds them.
        args = [ "-c" "echo $buildInputs > $out" ];
      };
    in {
      packages.${system} = { inherit busybox greet cacert bash devshell; default = devshell; };
      devShells.${system}.default = devshell;
    };
}
