import BlockCore
import NBD

/// `qemu-nbd -L`: qemu-nbd as a client listing another server's exports
/// (QEMU 7.2's `qemu_nbd_client_list`), with its output format.
@BlockActor
enum ServeList {
  /// QEMU's names of the transmission flags, by bit (`flag_names`).
  static let flagNames: [Int: String] = [
    1: "readonly", 2: "flush", 3: "fua", 4: "rotational", 5: "trim", 6: "zeroes", 7: "df",
    8: "multi", 9: "resize", 10: "cache", 11: "fast-zero",
  ]

  /// Lists the exports of the server at `address` (over TLS with `tls`):
  /// 0 once printed, 1 (the
  /// error reported) when the server cannot be reached or listed.
  static func run(_ address: NBDServerAddress, tls: NBDClientTLS? = nil, reporter: Reporter)
    async -> Int32
  {
    let exports: [NBDListedExport]
    do {
      exports = try await NBDExportListing.list(address, tls: tls)
    } catch {
      reporter.error(errorMessage(error))
      return 1
    }
    reporter.console.write(render(exports))
    return 0
  }

  /// The text qemu-nbd prints for `exports`.
  static func render(_ exports: [NBDListedExport]) -> String {
    var text = "exports available: \(exports.count)\n"
    for export in exports {
      text += " export: '\(export.name)'\n"
      if let description = export.description, !description.isEmpty {
        text += "  description: \(description)\n"
      }
      if export.flags & NBDTransmissionFlags.hasFlags.rawValue != 0 {
        text += "  size:  \(export.size)\n"
        text += "  flags: 0x\(String(export.flags, radix: 16)) ("
        for bit in 0..<12 where export.flags & (1 << bit) != 0 {
          if let name = flagNames[bit] { text += " \(name)" }
        }
        text += " )\n"
      }
      if export.minimumBlock != 0 {
        text += "  min block: \(export.minimumBlock)\n"
        text += "  opt block: \(export.preferredBlock)\n"
        text += "  max block: \(export.maximumBlock)\n"
      }
      if !export.contexts.isEmpty {
        text += "  available meta contexts: \(export.contexts.count)\n"
        for context in export.contexts { text += "   \(context)\n" }
      }
    }
    return text
  }
}
