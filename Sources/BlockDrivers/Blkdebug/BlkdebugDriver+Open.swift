import BlockCore
import Foundation
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension BlkdebugDriver {
  /// The filename prefix that selects blkdebug.
  static let filenamePrefix = "blkdebug:"

  /// Splits a `blkdebug:CONFIG:IMAGE` filename (QEMU's
  /// `blkdebug_parse_filename`) into `config` (when not empty) and `x-image`.
  /// A filename without the prefix is the image.
  static func parseFilename(_ filename: String, into options: inout DriverOptions) throws {
    guard filename.hasPrefix(filenamePrefix) else {
      options["x-image"] = filename
      return
    }
    let rest = filename.dropFirst(filenamePrefix.count)
    guard let colon = rest.firstIndex(of: ":") else {
      throw BlockError(.invalidArgument, "blkdebug requires both config file and image path")
    }
    if colon != rest.startIndex { options["config"] = String(rest[..<colon]) }
    options["x-image"] = String(rest[rest.index(after: colon)...])
  }

  /// Opens a blkdebug node (the ``ImageOpener`` factory): its rules from the
  /// configuration file and the options, its `image` child, and its limits
  /// (QEMU's `blkdebug_open`).
  static func openNode(_ options: inout DriverOptions, _ context: OpenContext) async throws
    -> BlockNode
  {
    if let filename = options.take("filename") ?? options.take("file.filename") {
      try parseFilename(filename, into: &options)
    }
    let config = options.take("config")
    let image = options.take("x-image")
    var sections: [BlkdebugConfig.Section] = []
    if let config {
      sections = try BlkdebugConfig.parseFile(try readConfig(config))
    }
    sections += try BlkdebugConfig.takeSections(&options)
    let rules = try BlkdebugConfig.rules(from: sections)
    var overrides = LimitOverrides()
    overrides.align = try options.takeSize("align") ?? 0
    overrides.maxTransfer = try options.takeSize("max-transfer") ?? 0
    overrides.optWriteZero = try options.takeSize("opt-write-zero") ?? 0
    overrides.maxWriteZero = try options.takeSize("max-write-zero") ?? 0
    overrides.optDiscard = try options.takeSize("opt-discard") ?? 0
    overrides.maxDiscard = try options.takeSize("max-discard") ?? 0

    let permissions = try BlkdebugChildPermissions(taking: &options)
    try permissions.check(readOnly: context.node.readOnly)
    var childContext = context
    if !permissions.sharesWrites { childContext.sharesFileWrites = false }

    var child = options.takeChild("image")
    if let reference = options.take("image") { child["filename"] = reference }
    let file = try await ImageOpener.openChild(
      &child, filename: child["filename"] == nil ? image : nil, role: "image",
      context: childContext)
    do {
      try validate(overrides, childAlignment: file.limits.requestAlignment)
      let driver = BlkdebugDriver(
        rules: rules, overrides: overrides, configFile: config,
        fileCapabilities: file.capabilities)
      let node = BlockNode(name: ImageOpener.newNodeName(), driver: driver, options: context.node)
      node.attach(file, role: .file)
      try await node.open()
      try await node.emit(.none)
      return node
    } catch {
      await file.close()
      throw error
    }
  }

  /// The text of a configuration file, or QEMU's error when it cannot be read.
  static func readConfig(_ path: String) throws -> String {
    guard let handle = fopen(path, "r") else {
      let code = Errno(rawValue: errno)
      throw BlockError(
        code, "Could not read blkdebug config file: \(Errno.describe(code))")
    }
    fclose(handle)
    guard let data = FileManager.default.contents(atPath: path) else {
      throw BlockError(.ioError, "Could not read blkdebug config file: \(Errno.describe(.ioError))")
    }
    return String(decoding: data, as: UTF8.self)
  }

  /// QEMU's checks of the limit options: each below 2^31 and aligned to the
  /// request alignment (the larger of `align` and the child's), the maxima to
  /// their optimal sizes too; `align` a power of two.
  static func validate(_ overrides: LimitOverrides, childAlignment: Int64) throws {
    func fail(_ name: String, _ value: Int64) -> BlockError {
      BlockError(.invalidArgument, "Cannot meet constraints with \(name) \(value)")
    }
    let limit = Int64(Int32.max)
    let align = overrides.align
    if align != 0 && (align >= limit || align & (align - 1) != 0) { throw fail("align", align) }
    let required = max(align, childAlignment)
    func check(_ name: String, _ value: Int64, multipleOf unit: Int64) throws {
      if value != 0 && (value >= limit || value % unit != 0) { throw fail(name, value) }
    }
    try check("max-transfer", overrides.maxTransfer, multipleOf: required)
    try check("opt-write-zero", overrides.optWriteZero, multipleOf: required)
    try check(
      "max-write-zero", overrides.maxWriteZero,
      multipleOf: max(overrides.optWriteZero, required))
    try check("opt-discard", overrides.optDiscard, multipleOf: required)
    try check(
      "max-discard", overrides.maxDiscard, multipleOf: max(overrides.optDiscard, required))
  }
}
