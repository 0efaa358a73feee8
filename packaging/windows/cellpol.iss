; Inno Setup 6 script: Windows installer for CellPol Studio from the PyInstaller bundle (dist\cellpol).
;   iscc /DAppVersion=0.1.0 packaging\windows\cellpol.iss      -> dist\cellpol-studio-0.1.0-windows-x64-setup.exe
; Installs per user without admin rights (or for all users when run elevated); Start menu entry, optional
; desktop icon, uninstaller (Settings > Apps). CellPol projects are a fixed file name (cellpol-project.json)
; inside a folder, and Windows associates by extension only, so instead of taking over every .json the
; installer offers CellPol Studio in .json's "Open with" list and adds "Open in CellPol Studio" to folders.
; Built and tested by .github/workflows/installers.yml (cannot run on the Linux development machine).

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define AppName "CellPol Studio"
#define AppExe "cellpol.exe"
#define ProgId "CellPolStudio.Project"

[Setup]
AppId={{5B0C7E2A-4F1D-4C8E-9C61-2B7D3E8A9F10}
AppName={#AppName}
AppVersion={#AppVersion}
AppPublisher=CellPol Studio
DefaultDirName={autopf}\CellPol Studio
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=cellpol-studio-{#AppVersion}-windows-x64-setup
SetupIconFile=..\icons\cellpol.ico
UninstallDisplayIcon={app}\{#AppExe}
Compression=lzma2/max
SolidCompression=yes
LZMANumBlockThreads=4
WizardStyle=modern
ChangesAssociations=yes

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "..\..\dist\cellpol\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExe}"; Parameters: "gui"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Parameters: "gui"; Tasks: desktopicon

[Registry]
; The project type: a ProgID offered for cellpol-project.json (and other .json) in "Open with".
Root: HKA; Subkey: "Software\Classes\{#ProgId}"; ValueType: string; ValueData: "CellPol Studio project"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\{#ProgId}\DefaultIcon"; ValueType: string; ValueData: "{app}\{#AppExe},0"
Root: HKA; Subkey: "Software\Classes\{#ProgId}\shell\open\command"; ValueType: string; ValueData: """{app}\{#AppExe}"" gui ""%1"""
Root: HKA; Subkey: "Software\Classes\.json\OpenWithProgids"; ValueType: string; ValueName: "{#ProgId}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".json"; ValueData: ""; Flags: uninsdeletekey
; A project is a folder: "Open in CellPol Studio" on folders.
Root: HKA; Subkey: "Software\Classes\Directory\shell\CellPolStudio"; ValueType: string; ValueData: "Open in CellPol Studio"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\Directory\shell\CellPolStudio"; ValueType: string; ValueName: "Icon"; ValueData: "{app}\{#AppExe},0"
Root: HKA; Subkey: "Software\Classes\Directory\shell\CellPolStudio\command"; ValueType: string; ValueData: """{app}\{#AppExe}"" gui ""%1"""

[Run]
Filename: "{app}\{#AppExe}"; Parameters: "gui"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Python caches the app may write next to itself; user data (projects, settings, logs) is elsewhere and stays.
Type: filesandordirs; Name: "{app}\_internal"
