import BlockCore
import BlockDrivers
import NBD

/// Opens the image, listens, and serves until the server stops (qemu-nbd's
/// `main` after option parsing).
@BlockActor
struct ServeRunner {
  let options: ServeOptions
  let reporter: Reporter
  /// How many sockets socket activation passed (0 or 1, checked by
  /// ``ServeCommand``).
  let activated: Int
  /// --tls-creds: the server's TLS credentials.
  let tlsCredentials: NBDTLSCredentials?

  func run() async -> Int32 {
    if activated == 0, let label = options.selinuxLabel,
      let problem = ServeSELinux.applyLabel(label)
    {
      reporter.error(problem)
      return 1
    }
    let console = reporter.console
    let reporter = reporter
    var tls: NBDServerTLS?
    if let tlsCredentials {
      do {
        tls = try NBDServerTLS(
          credentials: tlsCredentials, authorizedIdentity: try authorizedIdentity())
      } catch {
        reporter.error("\(error)")
        return 1
      }
    }
    let server = NBDServer(
      persistent: options.persistent, shared: options.shared,
      handshakeLimit: options.handshakeLimit > 0 ? .seconds(options.handshakeLimit) : nil,
      tls: tls, maxRequests: options.maxRequests
    ) {
      reporter.error($0)
      console.flush()
    }
    onShutdownSignal { Task { @BlockActor in server.shutdown() } }
    // qemu-nbd listens before it opens the image.
    do {
      if activated == 1 {
        try await server.listen(on: .inherited(descriptor: 3))
      } else if let path = options.socketPath {
        try await server.listen(on: .unix(path: path))
      } else {
        let port = Int(options.port ?? "10809") ?? -1
        guard (0...65535).contains(port) else {
          reporter.error("Failed to find an available port: Invalid argument")
          return 1
        }
        try await server.listen(on: .tcp(host: options.bindAddress ?? "0.0.0.0", port: port))
      }
    } catch {
      reporter.error("\(error)")
      await server.stop()
      return 1
    }
    guard let opened = await open(), let backend = await applyOffset(opened) else {
      await server.stop()
      return 1
    }
    let root = backend.root
    if let snapshot = options.snapshot {
      do {
        try await snapshot.load(into: root)
      } catch {
        reporter.error("Failed to load snapshot: \(errorMessage(error))")
        await backend.close()
        await server.stop()
        return 1
      }
    }
    let bitmaps: [DirtyBitmap]
    do {
      bitmaps = try await exportedBitmaps(root)
    } catch {
      reporter.error(errorMessage(error))
      await backend.close()
      await server.stop()
      return 1
    }
    // QEMU's raw format restricts a probed image to 512-byte requests (to
    // guard block 0), which qemu-nbd advertises as the minimum block size;
    // the raw node -o puts on top was not probed.
    let probedRaw =
      root.driver.formatName == "raw" && options.format == nil && !options.imageOpts
      && !options.filename.hasPrefix("json:") && options.offset == 0
    let alignment = max(root.limits.requestAlignment, probedRaw ? 512 : 1)
    let export = NBDExportInfo(
      name: options.exportName, description: options.description,
      size: UInt64(max(backend.length, 0)) & ~511, readOnly: options.readOnly,
      multiConn: options.shared != 1,
      requestAlignment: UInt32(clamping: alignment),
      maxTransfer: UInt32(clamping: root.limits.maxTransfer),
      allocationDepth: options.allocationDepth, bitmaps: options.bitmaps)
    if let path = options.pidFile, let problem = PidFile.write(to: path) {
      reporter.error(problem)
      await backend.close()
      await server.stop()
      return 1
    }
    if let device = options.device {
      // qemu-nbd's client thread fails to attach the device; it then ends
      // the server with SIGTERM and exits 1.
      reporter.error(ServeDevice.connectFailure(device))
      await backend.close()
      await server.stop()
      return 1
    }
    console.flush()
    // A --fork daemon now serves: its parent may return.
    ServeDaemon.ready()
    await server.run(backend: backend, export: export, bitmaps: bitmaps)
    await backend.close()
    return 0
  }

  /// `-o`: a raw node with the offset on top of the image (qemu-nbd's
  /// `dev_offset`), or the backend as it is without one; nil (the image
  /// closed, the error reported) when the offset does not fit.
  /// The identity of the `authz-simple` object --tls-authz names (QEMU
  /// looks it up per client and refuses all when it is missing; Spindle
  /// refuses to start instead).
  private func authorizedIdentity() throws -> String? {
    guard let id = options.tlsAuthz else { return nil }
    guard let identity = NBDTLSObjects.authorizations[id] else {
      throw BlockError(.invalidArgument, "No authorization object with ID '\(id)'")
    }
    return identity
  }

  private func applyOffset(_ backend: BlockBackend) async -> BlockBackend? {
    guard options.offset != 0 else { return backend }
    do {
      // The option goes through a QDict as an int64: above 2^63 it is negative.
      guard let offset = Int64(exactly: options.offset) else {
        throw BlockError(
          .invalidArgument,
          "Parameter 'offset' expects a non-negative number below 2^64\n"
            + "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            + "and exabytes, respectively.")
      }
      let image = backend.root
      let window = try await RawDriver.window(over: image, offset: offset, options: image.options)
      backend.detachRoot()
      return BlockBackend(root: window)
    } catch {
      reporter.error(errorMessage(error))
      await backend.close()
      return nil
    }
  }

  /// The `-B` bitmaps (QEMU's `nbd_export_create`): each looked up on the
  /// root, then down its chain of backing files, with qemu-nbd's errors.
  private func exportedBitmaps(_ root: BlockNode) async throws -> [DirtyBitmap] {
    var found: [DirtyBitmap] = []
    for name in options.bitmaps {
      var node: BlockNode? = root
      var bitmap: DirtyBitmap?
      while let current = node, bitmap == nil {
        if let qcow2 = current.driver as? Qcow2Driver {
          bitmap = try await qcow2.exportedBitmap(current, named: name)
        }
        node = current.backing
      }
      guard let bitmap else {
        throw BlockError(.noSuchFileOrDirectory, "Bitmap '\(name)' is not found")
      }
      found.append(bitmap)
    }
    return found
  }

  /// `blk_new_open` with qemu-nbd's flags and its error message.
  private func open() async -> BlockBackend? {
    if options.imageOpts && options.format != nil {
      reporter.error("--image-opts and -f are mutually exclusive")
      return nil
    }
    var spec = ImageSpec()
    spec.format = options.format
    spec.node.readOnly = options.readOnly
    spec.node.cache = options.cache ?? .writeback
    spec.node.discard = options.discard
    spec.node.detectZeroes = options.detectZeroes
    spec.aio = options.aio
    // qemu-nbd opens without BDRV_O_NO_SHARE and its export shares every
    // permission (blk_exp_add): only a format's metadata keeps other writers
    // off the file (qcow2), a raw image may be written by others meanwhile.
    spec.sharesWrites = true
    spec.snapshot = options.temporaryOverlay
    if options.imageOpts {
      spec.options = parseOptionString(options.filename, impliedKey: "file", reporter: reporter)
    } else {
      spec.filename = options.filename
    }
    do {
      return try await openReporting(spec, named: options.filename, reporter: reporter)
    } catch {
      reporter.error(
        "Failed to blk_new_open '\(options.filename)': \(errorMessage(error))"
      )
      return nil
    }
  }
}
