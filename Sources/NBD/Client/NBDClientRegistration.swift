import BlockCore
import BlockDrivers

/// Makes the `nbd` driver known to ``ImageOpener``.
///
/// BlockDrivers cannot import this module (NBD depends on BlockDrivers), so
/// the driver registers itself into the opener's tables: `spindle` calls
/// ``register()`` at start-up, and so do tests that open NBD URLs.
public enum NBDClient {
  /// Registers `driver=nbd` and the filename prefixes `nbd:`, `nbd+tcp:`
  /// and `nbd+unix:`. Calling it again changes nothing.
  @BlockActor
  public static func register() {
    ImageOpener.drivers["nbd"] = DriverEntry(
      kind: .protocolDriver, open: NBDClientDriver.openNode, keepsProbedNode: true)
    for scheme in NBDFilename.schemes { ImageOpener.filenamePrefixes[scheme] = "nbd" }
  }
}
