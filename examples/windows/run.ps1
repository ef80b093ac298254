# The Windows entrypoint: testfleet runs it with PowerShell in the remote run folder.
Write-Output "hello from $env:COMPUTERNAME"
New-Item -ItemType Directory -Force artifacts | Out-Null
Get-ChildItem | Out-File artifacts/listing.txt
exit 0
