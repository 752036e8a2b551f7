import BlockCore
import SystemPackage

extension Qcow2Create {
  /// QEMU's checks of `data_file` and `data_file_raw` (`qcow2_co_create`).
  nonisolated static func checkDataFileOptions(_ options: Qcow2CreateOptions, version: UInt32)
    throws
  {
    if options.dataFile != nil && version < 3 {
      throw BlockError(
        .invalidArgument,
        "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"
      )
    }
    if options.dataFileRaw && options.dataFile == nil {
      throw BlockError(.invalidArgument, "data-file-raw requires data-file")
    }
    if options.dataFileRaw && options.backingFile != nil {
      throw BlockError(
        .invalidArgument, "Backing file and data-file-raw cannot be used at the same time")
    }
  }

  /// The external data file's header bits and name extension.
  nonisolated static func addDataFile(_ options: Qcow2CreateOptions, to header: inout Qcow2Header) {
    guard let name = options.dataFile else { return }
    header.incompatibleFeatures |= Qcow2Feature.externalDataFile
    if options.dataFileRaw { header.autoclearFeatures |= Qcow2Feature.rawExternalData }
    header.extensions.append(
      Qcow2HeaderExtension(type: Qcow2HeaderExtension.externalDataFile, data: Array(name.utf8)))
  }

  /// Creates (or empties) the data file and gives it the disk's length, as
  /// QEMU's file protocol creates it and the qcow2 driver then grows it:
  /// through the file driver's truncate, which writes the first block of a
  /// file grown from empty (QEMU's `allocate_first_block`).
  static func createDataFile(_ path: String, size: Int64) async throws {
    try await FileIOPool.run {
      let descriptor = try FileDescriptor.open(
        FilePath(path), .writeOnly, options: [.create, .truncate],
        permissions: [.ownerReadWrite, .groupRead, .otherRead])
      try descriptor.close()
    }
    var options = DriverOptions()
    options["driver"] = "file"
    options["filename"] = path
    let file = try await ImageOpener.open(filename: nil, options: options)
    do {
      try await file.truncate(to: size, preallocation: .off)
    } catch {
      await file.close()
      throw error
    }
    await file.close()
  }
}
