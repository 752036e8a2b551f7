import BlockCore

@testable import BlockDrivers

/// `qemu-img check -r all` on arbitrary bytes: the check never crashes or
/// hangs, and when it says it repaired everything it found, a fresh open
/// and check of the repaired image finds nothing (neither corruptions nor
/// leaks), except for damage QEMU's repair leaves in place too.
enum Qcow2CheckTarget {
  /// Inputs larger than this are skipped (the corpus images are smaller).
  static let maximumInput = 1 << 20

  static func run(_ input: [UInt8]) {
    guard input.count <= maximumInput else { return }
    runBlocking { await repairThenCheck(input) }
  }

  @BlockActor
  static func repairThenCheck(_ input: [UInt8]) async {
    let image = MemoryImage(input)
    guard let repair = await image.check([.fixLeaks, .fixErrors]) else { return }
    guard repair.repairedEverything else { return }
    // Damage QEMU's repair leaves in place as well (its double check still
    // reports it): reserved bits in L2 entries, references past the end of
    // the file. Spindle's output matches QEMU's there.
    if repair.messages.contains(where: {
      $0.contains("reserved bits set") || $0.contains("exceeding the end of the file")
    }) {
      return
    }
    guard let again = await image.check([]) else {
      fuzzCheck(false, "an image repaired without remaining errors no longer opens")
      return
    }
    fuzzCheck(
      again.isClean,
      "check after a complete repair is not clean: \(again.corruptions) corruptions, "
        + "\(again.leaks) leaks, \(again.checkErrors) check errors, failure \(String(describing: again.failure)); "
        + "repair: \(repair.messages)")
  }
}
