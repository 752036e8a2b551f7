// swift-tools-version: 6.0
import PackageDescription

let package = Package(
  name: "Spindle",
  platforms: [.macOS(.v14)],
  products: [
    .library(name: "BlockCore", targets: ["BlockCore"]),
    .library(name: "BlockDrivers", targets: ["BlockDrivers"]),
    // For the fuzz targets' package (Fuzz/), which reaches these by path.
    .library(name: "NBD", targets: ["NBD"]),
    .library(name: "SpindleCLI", targets: ["SpindleCLI"]),
    .executable(name: "spindle", targets: ["spindle"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    // TLS for NBD (STARTTLS, X.509 and PSK) and the DER parsing behind
    // --tls-authz's distinguished-name check.
    .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
  ],
  targets: [
    // The block layer's event loops: an I/O context is a serial executor on
    // its own thread with its own io_uring (BlockActor runs on the main one).
    .target(name: "BlockLoop", dependencies: ["CURing"]),
    .target(
      name: "BlockCore",
      dependencies: ["BlockLoop", .product(name: "SystemPackage", package: "swift-system")]
    ),
    // Linux file interfaces Swift's Glibc module does not import (O_DIRECT,
    // SEEK_DATA/SEEK_HOLE, OFD locks, fallocate); used by the file driver.
    .target(name: "CFileSupport"),
    // io_uring through Debian's liburing (liburing-dev): a small C shim over
    // liburing's inline submission and completion helpers.
    .target(name: "CURing", linkerSettings: [.linkedLibrary("uring")]),
    // zlib for qcow2 compressed clusters (Debian: zlib1g-dev).
    .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
    // zstd for qcow2 images with compression_type=zstd (Debian: libzstd-dev).
    .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
    // librados and librbd for the rbd protocol driver (Debian: librbd-dev,
    // Ceph 16 Pacific; no pkg-config files, the module map links them).
    .systemLibrary(name: "CRBD", providers: [.apt(["librbd-dev"])]),
    .target(
      name: "BlockDrivers",
      dependencies: [
        "BlockCore",
        "BlockLoop",
        "CFileSupport",
        "CRBD",
        "CZlib",
        "CZstd",
        .product(name: "SystemPackage", package: "swift-system"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]
    ),
    // The NBD protocol and server (`spindle serve`), on swift-nio.
    .target(
      name: "NBD",
      dependencies: [
        "BlockCore", "BlockDrivers", .product(name: "SystemPackage", package: "swift-system"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOTLS", package: "swift-nio"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ]
    ),
    .target(name: "BlockTestSupport", dependencies: ["BlockCore", "BlockDrivers"]),
    .target(
      name: "SpindleCLI",
      dependencies: [
        "BlockCore", "BlockDrivers", "NBD",
        .product(name: "SystemPackage", package: "swift-system"),
      ]
    ),
    .executableTarget(name: "spindle", dependencies: ["SpindleCLI"]),
    .testTarget(
      name: "BlockCoreTests",
      dependencies: ["BlockCore", "BlockLoop", "BlockDrivers", "BlockTestSupport"]),
    .testTarget(
      name: "BlockDriversTests",
      dependencies: ["BlockCore", "BlockLoop", "BlockDrivers", "BlockTestSupport"]),
    .testTarget(
      name: "NBDTests",
      dependencies: [
        "NBD", "BlockCore", "BlockDrivers", "BlockTestSupport",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
      ]),
    .testTarget(
      name: "SpindleCLITests",
      dependencies: ["SpindleCLI", "BlockCore", "BlockDrivers", "BlockTestSupport", "NBD"]),
  ],
  swiftLanguageModes: [.v6]
)
