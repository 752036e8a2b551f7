import BlockCore
import BlockDrivers
import Testing

@testable import NBD

/// How the `nbd` driver turns file names and options into a server address
/// and an export (QEMU 7.2's `nbd_parse_filename`, `nbd_parse_uri`,
/// `nbd_process_legacy_socket_options`, `nbd_config`). The messages of the
/// malformed names are checked against qemu-img in
/// `NBDClientInteropTests.malformedNamesFailAsQEMU`.
struct NBDClientConfigTests {
  private func config(_ options: [String: String]) throws -> NBDClientConfig {
    var options = DriverOptions(options)
    let config = try NBDClientConfig.take(from: &options)
    #expect(options.isEmpty, "left: \(options.values)")
    return config
  }

  private func message(_ options: [String: String]) -> String? {
    var options = DriverOptions(options)
    do {
      _ = try NBDClientConfig.take(from: &options)
      return nil
    } catch let error as BlockError {
      return error.message
    } catch {
      return "\(error)"
    }
  }

  @Test(arguments: [
    ("nbd://localhost/exp", NBDServerAddress.inet(host: "localhost", port: "10809"), "exp"),
    ("nbd://localhost:1234", .inet(host: "localhost", port: "1234"), ""),
    ("nbd+tcp://127.0.0.1:99/a/b", .inet(host: "127.0.0.1", port: "99"), "a/b"),
    ("nbd://[::1]:5/x", .inet(host: "::1", port: "5"), "x"),
    ("nbd://h/with%20space", .inet(host: "h", port: "10809"), "with space"),
    ("nbd+unix:///exp?socket=/tmp/s.sock", .unix(path: "/tmp/s.sock"), "exp"),
    ("nbd+unix://?socket=/tmp/s%3f", .unix(path: "/tmp/s?"), ""),
    ("nbd:unix:/tmp/s.sock", .unix(path: "/tmp/s.sock"), ""),
    ("nbd:unix:/tmp/s.sock:exportname=e", .unix(path: "/tmp/s.sock"), "e"),
    ("nbd:localhost:10810", .inet(host: "localhost", port: "10810"), ""),
    ("nbd:[::1]:7:exportname=x y", .inet(host: "::1", port: "7"), "x y"),
  ])
  func filenames(_ filename: String, _ server: NBDServerAddress, _ export: String) throws {
    let parsed = try config(["filename": filename])
    #expect(parsed.server == server)
    #expect(parsed.export == export)
  }

  @Test func structuredOptions() throws {
    let parsed = try config([
      "server.type": "unix", "server.path": "/s", "export": "e", "x-dirty-bitmap": "qemu:x",
      "reconnect-delay": "3", "open-timeout": "4",
    ])
    #expect(
      parsed
        == NBDClientConfig(
          server: .unix(path: "/s"), export: "e", dirtyBitmap: "qemu:x", reconnectDelay: 3,
          openTimeout: 4))
    #expect(try config(["host": "h"]).server == .inet(host: "h", port: "10809"))
    #expect(try config(["path": "/p"]).server == .unix(path: "/p"))
  }

  @Test(arguments: [
    (["filename": "nbd://"], "No valid URL specified"),
    (["filename": "nbd+unix:///x"], "No valid URL specified"),
    (["filename": "nbd+unix://h/x?socket=/s"], "No valid URL specified"),
    (["filename": "nbd+unix:///x?socket=/s&foo=1"], "No valid URL specified"),
    (["filename": "nbd://h/x?socket=/s"], "No valid URL specified"),
    (["filename": "nbd://localhost:99999/"], "No valid URL specified"),
    (["filename": "nbd://h/%zz"], "No valid URL specified"),
    (["filename": "nbd:foo"], "error parsing address 'foo'"),
    (["filename": "nbd:"], "NBD server address missing"),
    (["filename": "nbd:unix:/s:exportname="], "NBD server address missing"),
    (["filename": "nbdx:unix:/s"], "File name string for NBD must start with 'nbd:'"),
    (
      ["filename": "nbd:unix:/s", "export": "x"], "Option 'export' cannot be used with a file name"
    ),
    ([:], "NBD server address missing"),
    (["server.type": "unix"], "Parameter 'path' is missing"),
    (["server.type": "inet", "server.host": "h"], "Parameter 'port' is missing"),
    (["server.type": "bogus"], "Parameter 'type' does not accept value 'bogus'"),
    (["path": "/p", "host": "h"], "path and host may not be used at the same time"),
    (["path": "/p", "port": "1"], "port may not be used without host"),
    (
      ["path": "/p", "server.type": "unix", "server.path": "/q"],
      "Cannot use 'server' and path/host/port at the same time"
    ),
    (["path": "/p", "reconnect-delay": "x"], "Parameter 'reconnect-delay' expects a number"),
  ])
  func badOptions(_ options: [String: String], _ expected: String) {
    #expect(message(options) == expected)
  }

  /// `tls-creds` and `tls-hostname`, which defaults to the inet host (and
  /// to nothing for a Unix socket).
  @Test func tlsOptions() throws {
    let inet = try config([
      "server.type": "inet", "server.host": "h", "server.port": "1", "tls-creds": "t",
    ])
    #expect(inet.tlsCreds == "t" && inet.tlsHostname == "h")
    let named = try config([
      "server.type": "inet", "server.host": "h", "server.port": "1", "tls-creds": "t",
      "tls-hostname": "other",
    ])
    #expect(named.tlsHostname == "other")
    let unix = try config(["path": "/p", "tls-creds": "t"])
    #expect(unix.tlsCreds == "t" && unix.tlsHostname == nil)
    #expect(try config(["path": "/p", "x-multi-conn": "4"]).multiConn == 4)
    #expect(
      message(["path": "/p", "x-multi-conn": "17"])
        == "Parameter 'x-multi-conn' expects a number from 1 to 16")
    let plain = try config(["path": "/p"])
    #expect(plain.tlsCreds == nil && plain.tlsHostname == nil)
  }

  @Test func exportNamesLongerThan4096BytesAreRefused() {
    let name = String(repeating: "a", count: 4097)
    #expect(message(["path": "/p", "export": name]) == "export name too long to send to server")
    #expect(message(["path": "/p", "export": String(name.dropFirst())]) == nil)
  }

  @Test func extendedHeadersSwitch() throws {
    let socket = "nbd+unix://?socket=/tmp/s.sock"
    #expect(try config(["filename": socket]).extendedHeaders)
    #expect(try config(["filename": socket, "x-extended-headers": "on"]).extendedHeaders)
    #expect(try !config(["filename": socket, "x-extended-headers": "off"]).extendedHeaders)
    #expect(
      message(["filename": socket, "x-extended-headers": "yes"])
        == "Parameter 'x-extended-headers' expects 'on' or 'off'")
  }
}
