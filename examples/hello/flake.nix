{
  description = "ociforge example: a small image around a static busybox, no nixpkgs needed";

  # Real projects take their packages from nixpkgs; this example builds without any input so it
  # works offline on a machine with only Nix and Debian's busybox-static (/bin/busybox).
  outputs = { self }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs
        (map (system: { name = system; value = f system; }) systems);
      mkPackages = system: rec {
        busybox = builtins.derivation {
          name = "busybox-static";
          inherit system;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          args = [ "-c" ''
            mkdir -p $out/bin
            cp /bin/busybox $out/bin/busybox
            for applet in sh ash ls cat echo env id whoami uname wc head grep sed mkdir touch rm; do
              ln -s busybox $out/bin/$applet
            done
          '' ];
        };
        hello = builtins.derivation {
          name = "hello-ociforge-1.0";
          inherit system;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          args = [ "-c" ''
            mkdir -p $out/bin $out/share/hello
            echo "Hello from an ociforge image" > $out/share/hello/greeting
            printf '#!%s/bin/sh\ncat %s/share/hello/greeting\n' ${busybox} $out > $out/bin/hello
            chmod 555 $out/bin/hello
          '' ];
        };
        default = hello;
      };
    in {
      packages = forAllSystems mkPackages;
    };
}
