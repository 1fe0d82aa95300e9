{
  "targets": [
    {
      "target_name": "fsx",
      "sources": ["native/fsx.c"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
      "xcode_settings": {
        "OTHER_CFLAGS": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
        "MACOSX_DEPLOYMENT_TARGET": "10.13"
      }
    }
  ]
}
