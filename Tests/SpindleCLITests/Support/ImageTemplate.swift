import Foundation

/// A set of images built once per test process (by the real qemu-img and
/// qemu-io) and copied into each run's directory, so that a differential
/// suite with many runs does not rebuild them every time. Backing files must
/// be named relative to the images.
final class ImageTemplate: Sendable {
  private let fixture: ImageFixture
  private let directory: String

  private init(fixture: ImageFixture, directory: String) {
    self.fixture = fixture
    self.directory = directory
  }

  /// Builds the template with `build` (called with its directory).
  static func build(_ build: @Sendable (String) async throws -> Void) async throws -> ImageTemplate
  {
    let fixture = try ImageFixture()
    let directory = fixture.path("template")
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    try await build(directory)
    return ImageTemplate(fixture: fixture, directory: directory)
  }

  /// Copies every image into `destination`.
  func copy(into destination: String) throws {
    for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
      try FileManager.default.copyItem(
        atPath: "\(directory)/\(name)", toPath: "\(destination)/\(name)")
    }
  }

  /// Links every image into `destination` (for commands that only read).
  func link(into destination: String) throws {
    for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
      try FileManager.default.createSymbolicLink(
        atPath: "\(destination)/\(name)", withDestinationPath: "\(directory)/\(name)")
    }
  }
}
