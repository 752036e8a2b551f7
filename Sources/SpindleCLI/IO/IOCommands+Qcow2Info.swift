import BlockDrivers

extension IOSession {
  /// The `info` lines of a qcow2 image (QEMU's `qcow2_get_info` and
  /// `qcow2_get_specific_info` as qemu-io prints them): the cluster size, the
  /// VM state offset (the first guest offset past the L2 tables the disk
  /// needs; an L2 table maps fewer clusters when its entries are extended)
  /// and the format-specific members.
  func printQcow2Info(_ header: Qcow2Header) {
    let l2Span = UInt64(header.clusterSize) * UInt64(header.l2Entries)
    let vmStateOffset = (UInt64(header.size) + l2Span - 1) / l2Span * l2Span
    console.write("cluster size: \(humanSize(Double(header.clusterSize)))\n")
    console.write("vm state offset: \(humanSize(Double(vmStateOffset)))\n")
    console.write("Format specific information:\n")
    for (key, value) in qcow2SpecificInfo(header) {
      console.write("    \(key.replacing("-", with: " ")): \(value.humanValue)\n")
    }
  }
}
