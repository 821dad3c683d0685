package warm

// DigestFile is digestFile, for the external tests.
var DigestFile = digestFile
