import BlockCore

extension Qcow2Driver {
  /// QEMU's warning (`qcow2_read_extensions`) on every open of an image
  /// whose bitmaps extension a program lacking bitmap support invalidated
  /// (the autoclear bit is clear, as it always is in a version 2 header, which
  /// QEMU 7.2 leaves with its bitmaps when it downgrades an image): the
  /// bitmaps are ignored, and their clusters leaked. The hint has no newline, as QEMU's.
  static func warnIfBitmapsInvalidated(_ header: Qcow2Header, context: OpenContext) {
    guard header.autoclearFeatures & Qcow2Feature.bitmaps == 0,
      header.extensions.contains(where: { $0.type == Qcow2HeaderExtension.bitmaps })
    else { return }
    // A version 2 header has no autoclear bits: QEMU is "more specific".
    let warning =
      header.version < 3
      ? "warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a "
        + "program without persistent bitmap support; so now they must all be considered "
        + "inconsistent"
      : "warning: a program lacking bitmap support modified this file, so all bitmaps are now "
        + "considered inconsistent"
    if let errorReport = context.errorReport {
      errorReport(warning)
    } else {
      writeToStandardError(warning + "\n")
    }
    let hint = "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix."
    if let diagnostics = context.diagnostics {
      diagnostics(hint)
    } else {
      writeToStandardError(hint)
    }
  }
}

extension Qcow2Driver {
  /// A writable open drops an invalidated bitmaps extension from the header,
  /// version 2 or 3 (QEMU keeps no such extension, so its next header update leaves it
  /// out); the bitmaps' clusters stay leaked until `check -r leaks`.
  func dropInvalidatedBitmaps(_ node: BlockNode) async throws {
    guard refcounts != nil,
      header.autoclearFeatures & Qcow2Feature.bitmaps == 0,
      header.extensions.contains(where: { $0.type == Qcow2HeaderExtension.bitmaps })
    else { return }
    try await rewriteHeader(fileNode(node)) { header in
      header.extensions.removeAll { $0.type == Qcow2HeaderExtension.bitmaps }
    }
  }
}
