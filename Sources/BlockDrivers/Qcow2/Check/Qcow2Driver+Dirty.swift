import BlockCore
import Glibc

extension Qcow2Driver {
  /// QEMU's writable open of a dirty image (lazy refcounts left it
  /// inconsistent): a check repairing leaks and errors, its diagnostics on
  /// standard error, which clears the dirty bit; an image the repair leaves
  /// with errors is not opened.
  func repairIfDirty(_ node: BlockNode) async throws {
    guard header.incompatibleFeatures & Qcow2Feature.dirty != 0 else { return }
    let result = try await check(node, mode: [.fixLeaks, .fixErrors])
    for line in result.messages {
      let bytes = Array((line + "\n").utf8)
      _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
    if let failure = result.failure {
      throw BlockError(failure.code, "Could not repair dirty image")
    }
    if result.checkErrors != 0 {
      throw BlockError(.ioError, "Could not repair dirty image")
    }
  }
}
