// swift-tools-version: 6.0
import PackageDescription

// libFuzzer targets for Spindle, kept out of the main package's `swift build`
// and `swift test`: build them with Fuzz/build.sh (debug, so the main
// package's modules are built with -enable-testing and `@testable import`
// reaches their internal parsers; `-sanitize=fuzzer,address`).
// One executable holds every target; SPINDLE_FUZZ_TARGET picks one.
let package = Package(
  name: "SpindleFuzz",
  dependencies: [
    .package(name: "Spindle", path: ".."),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
  ],
  targets: [
    .executableTarget(
      name: "SpindleFuzz",
      dependencies: [
        .product(name: "BlockCore", package: "Spindle"),
        .product(name: "BlockDrivers", package: "Spindle"),
        .product(name: "NBD", package: "Spindle"),
        .product(name: "SpindleCLI", package: "Spindle"),
        .product(name: "NIOCore", package: "swift-nio"),
      ],
      // libFuzzer brings `main`: the module has no entry point of its own.
      swiftSettings: [.unsafeFlags(["-parse-as-library"])]
    )
  ],
  swiftLanguageModes: [.v6]
)
