import BlockCore
import BlockDrivers
import Foundation
import NBD

/// The objects one command line defines with `--object` (QEMU's
/// `user_creatable_process_cmdline` into `/objects`): `secret`,
/// `tls-creds-x509`, `tls-creds-psk` and `authz-simple` objects are created
/// and kept by ID; QEMU's other user-creatable types are refused as not
/// supported yet, and anything else with QEMU's error text.
struct ObjectRegistry {
  /// Defined secrets by ID.
  private(set) var secrets: [String: SecretObject] = [:]
  /// Defined TLS credentials by ID.
  private(set) var tlsCredentials: [String: NBDTLSCredentials] = [:]
  /// Defined `authz-simple` identities by ID.
  private(set) var authorizations: [String: String] = [:]

  /// Types qemu-img 7.2 can create, as `--object help` lists them.
  static let qemuCreatableTypes = [
    "authz-list", "authz-list-file", "authz-simple", "main-loop", "pr-manager-helper", "secret",
    "secret_keyring", "thread-context", "throttle-group", "tls-cipher-suites", "tls-creds-anon",
    "tls-creds-psk", "tls-creds-x509",
  ]
  /// Types Spindle can create.
  static let spindleCreatableTypes = ["authz-simple", "secret", "tls-creds-psk", "tls-creds-x509"]
  /// QEMU 7.2's other object types (its `ObjectType` enumeration), which
  /// qemu-img knows by name but cannot create.
  static let otherQemuTypes: Set<String> = [
    "can-bus", "can-host-socketcan", "colo-compare", "cryptodev-backend",
    "cryptodev-backend-builtin", "cryptodev-vhost-user", "dbus-vmstate", "filter-buffer",
    "filter-dump", "filter-mirror", "filter-redirector", "filter-replay", "filter-rewriter",
    "input-barrier", "input-linux", "iothread", "memory-backend-epc", "memory-backend-file",
    "memory-backend-memfd", "memory-backend-ram", "pef-guest", "rng-builtin", "rng-egd",
    "rng-random", "sev-guest", "s390-pv-guest", "x-remote-object", "x-vfio-user-server",
  ]

  /// The text `--object help` prints: the types Spindle can create, in
  /// QEMU's layout.
  static var typeListHelp: String {
    "List of user creatable objects:\n" + spindleCreatableTypes.map { "  \($0)\n" }.joined()
  }

  /// The secret named `id`, if one was defined.
  func secret(_ id: String) -> SecretObject? { secrets[id] }

  /// Handles one `--object` argument for a command: defines the object, or
  /// prints help and ends the command with status 0, or reports QEMU's
  /// error and ends it with `failureStatus` (2 for `compare`, 1 elsewhere).
  @BlockActor
  mutating func add(
    _ argument: String, reporter: Reporter, console: Console, failureStatus: Int32 = 1
  ) throws(CommandExit) {
    do {
      if let help = try define(argument) {
        console.write(help)
        throw CommandExit(status: 0)
      }
      // QEMU's objects are the process's (`/objects`): drivers that take a
      // secret by ID (rbd's key-secret) find it there.
      for (id, secret) in secrets { ImageOpener.definedSecrets[id] = secret.rawBytes }
      NBDTLSObjects.credentials.merge(tlsCredentials) { _, new in new }
      NBDTLSObjects.authorizations.merge(authorizations) { _, new in new }
      NBDTLSObjects.otherObjectIDs.formUnion(secrets.keys)
      NBDTLSObjects.otherObjectIDs.formUnion(authorizations.keys)
    } catch let error as ObjectError {
      reporter.error(error.message)
      if let hint = error.hint { console.writeError(hint + "\n") }
      throw CommandExit(status: failureStatus)
    } catch let exit as CommandExit {
      throw exit
    } catch {
      throw CommandExit(status: failureStatus)
    }
  }

  /// Defines the object `argument` describes; returns the help text instead
  /// when it asks for help.
  mutating func define(_ argument: String) throws -> String? {
    let definition =
      argument.hasPrefix("{")
      ? try ObjectDefinition(json: argument) : try ObjectDefinition(parsing: argument)
    let type = definition["qom-type"]
    if definition.wantsHelp {
      if type == "secret" { return SecretObject.help }
      if let type, let help = TLSObjects.help(type) { return help }
      // QEMU lists the properties of the types it can create; Spindle
      // cannot list those of types it does not have.
      if let type, Self.qemuCreatableTypes.contains(type) {
        throw ObjectError("Object type '\(type)' is not supported by Spindle yet")
      }
      return Self.typeListHelp
    }
    guard let type else { throw ObjectError("Parameter 'qom-type' is missing") }
    guard Self.qemuCreatableTypes.contains(type) || Self.otherQemuTypes.contains(type) else {
      throw ObjectError("Parameter 'qom-type' does not accept value '\(type)'")
    }
    guard let id = definition["id"] else { throw ObjectError("Parameter 'id' is missing") }
    guard Self.isIdentifier(id) else {
      throw ObjectError(
        "Parameter 'id' expects an identifier",
        hint: "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.")
    }
    guard Self.qemuCreatableTypes.contains(type) else {
      throw ObjectError("invalid object type: \(type)")
    }
    guard Self.spindleCreatableTypes.contains(type) else {
      throw ObjectError("Object type '\(type)' is not supported by Spindle yet")
    }
    if type == "secret" {
      try SecretObject.checkProperties(definition)
    } else {
      try TLSObjects.checkProperties(type: type, definition)
    }
    // QEMU adds the object under its ID before completing it.
    guard secrets[id] == nil, tlsCredentials[id] == nil, authorizations[id] == nil else {
      throw ObjectError("attempt to add duplicate property '\(id)' to object (type 'container')")
    }
    switch type {
    case "secret":
      secrets[id] = try SecretObject(id: id, definition: definition) { secrets[$0] }
    case "authz-simple":
      authorizations[id] = try TLSObjects.identity(definition)
    default:
      tlsCredentials[id] = try TLSObjects.credentials(type: type, id: id, definition)
    }
    return nil
  }

  /// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
  static func isIdentifier(_ id: String) -> Bool {
    guard let first = id.unicodeScalars.first, first.isASCII, first.properties.isAlphabetic
    else { return false }
    return id.unicodeScalars.allSatisfy {
      $0.isASCII
        && ($0.properties.isAlphabetic || ("0"..."9").contains($0)
          || "-._".unicodeScalars.contains($0))
    }
  }
}
