// SwiftPM needs a source file for the SpindleCLITests target declared in
// Package.swift; the CLI's tests live on their own branch.
import SpindleCLI
