"""The wire format of the API: payload shapes, the text and JSON codecs, and size syntax.

Pure code, shared by the daemon and the client tools. Nothing here knows what a drive is.
"""
