; Tilewise installer (NSIS 3, Modern UI 2): per user, no administrator rights.
;
; Compile with installer/build_installer.sh, or by hand:
;   makensis -WX -DVERSION=0.1.0 -DVI_VERSION=0.1.0.0 -DBUNDLE_DIR=<abs>/dist/Tilewise -DEXE_NAME=Tilewise.exe
;            -DCLI_EXE_NAME=tilewise-cli.exe -DINSTALL_SIZE_KB=<du -sk of the bundle> -DOUTFILE=<abs>/Tilewise-setup.exe
;            installer/tilewise.nsi
; EXE_NAME and CLI_EXE_NAME are defines so the same script also packs the Linux bundle (Tilewise, tilewise-cli) in CI.
;
; Installs to %LOCALAPPDATA%\Programs\Tilewise. Everything it writes to the registry is under HKCU:
;   Software\Microsoft\Windows\CurrentVersion\Uninstall\Tilewise   (Apps & features; also remembers the folder)
;   Software\Classes\Applications\<EXE_NAME>                       ("Open with" entry of the application)
;   Software\Classes\Tilewise.Volume                               (ProgID the file types point at)
;   Software\Classes\<.ext>\OpenWithProgids  value Tilewise.Volume (for .nii, .gz, .nrrd, .mha)
; The viewer's own settings (QSettings, HKCU\Software\Tilewise\Tilewise) and a CUDA torch that a GPU user added
; (%LOCALAPPDATA%\Tilewise\cuda-torch) are the user's, not the installer's: the uninstaller leaves them.
; Silent: Tilewise-<version>-setup.exe /S [/D=folder]  and  "<folder>\Uninstall.exe" /S

Unicode true
ManifestDPIAware true

!ifndef VERSION
  !error "pass -DVERSION=x.y.z"
!endif
!ifndef VI_VERSION
  !define VI_VERSION "${VERSION}.0"
!endif
!ifndef BUNDLE_DIR
  !error "pass -DBUNDLE_DIR=<the PyInstaller one-folder bundle, dist/Tilewise>"
!endif
!ifndef EXE_NAME
  !define EXE_NAME "Tilewise.exe"
!endif
!ifndef CLI_EXE_NAME
  !define CLI_EXE_NAME "tilewise-cli.exe"
!endif
!ifndef OUTFILE
  !define OUTFILE "Tilewise-${VERSION}-setup.exe"
!endif
!ifndef INSTALL_SIZE_KB
  !define INSTALL_SIZE_KB 0
!endif

!define APP "Tilewise"
!define PUBLISHER "Tilewise contributors"
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\${APP}"
!define APP_KEY "Software\Classes\Applications\${EXE_NAME}"
!define PROGID "Tilewise.Volume"
!define PROGID_KEY "Software\Classes\${PROGID}"
!define UNINSTALLER "Uninstall.exe"

Name "${APP}"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\${APP}"
InstallDirRegKey HKCU "${UNINSTALL_KEY}" "InstallLocation"
RequestExecutionLevel user
ShowInstDetails nevershow
ShowUninstDetails nevershow
BrandingText "${APP} ${VERSION}"

; Compression. makensis compresses on one thread. Measured on the 2-core CI machine with the 1.4 GB Linux bundle:
; zlib 3.0 min -> 433 MB, lzma (non-solid) 10.7 min -> 323 MB; solid lzma is slower still. zlib keeps the installer
; steps of CI well inside its time budget, and NSIS's 2 GB limit is far away either way. -DCOMPRESSOR=lzma (or
; COMPRESSOR=lzma installer/build_installer.sh) makes a smaller download.
!ifdef COMPRESSOR
  SetCompressor /FINAL ${COMPRESSOR}
!else
  SetCompressor /FINAL zlib
!endif

VIProductVersion "${VI_VERSION}"
VIAddVersionKey /LANG=1033 "ProductName" "${APP}"
VIAddVersionKey /LANG=1033 "ProductVersion" "${VERSION}"
VIAddVersionKey /LANG=1033 "FileVersion" "${VERSION}"
VIAddVersionKey /LANG=1033 "FileDescription" "${APP} installer"
VIAddVersionKey /LANG=1033 "CompanyName" "${PUBLISHER}"
VIAddVersionKey /LANG=1033 "LegalCopyright" "Apache-2.0"

!include "MUI2.nsh"
!include "LogicLib.nsh"
!include "x64.nsh"

!define MUI_ICON "tilewise.ico"
!define MUI_UNICON "tilewise.ico"
!define MUI_ABORTWARNING
!define MUI_COMPONENTSPAGE_SMALLDESC
!define MUI_FINISHPAGE_RUN "$INSTDIR\${EXE_NAME}"
!define MUI_FINISHPAGE_RUN_TEXT "Start ${APP} (opens the sample scan with the demo model)"

!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

; --- file types ---------------------------------------------------------------------------------------------------
; Windows keys file types on the text after the *last* dot, so "scan.nii.gz" is a ".gz" file to Explorer: there is
; no ".nii.gz" type to register. Tilewise is therefore added to the "Open with" list of .gz files (OpenWithProgids
; only: it never becomes the default program of .gz, which stays with whatever archive tool owns it). Opening a .gz
; that is not an image shows the viewer's error dialog. .nii, .nrrd and .mha are registered the same way.
!macro ADD_OPEN_WITH EXT
  WriteRegStr HKCU "Software\Classes\${EXT}\OpenWithProgids" "${PROGID}" ""
  WriteRegStr HKCU "${APP_KEY}\SupportedTypes" "${EXT}" ""
!macroend

; Removes our value, then OpenWithProgids and the extension's key only if nothing else (another program's values or
; subkeys) is left in them. NSIS's DeleteRegKey /ifempty looks at subkeys only, so values are checked here.
!macro REMOVE_OPEN_WITH EXT
  DeleteRegValue HKCU "Software\Classes\${EXT}\OpenWithProgids" "${PROGID}"
  Push "Software\Classes\${EXT}\OpenWithProgids"
  Call un.DeleteKeyIfEmpty
  Push "Software\Classes\${EXT}"
  Call un.DeleteKeyIfEmpty
!macroend

Function un.DeleteKeyIfEmpty
  Exch $0
  Push $1
  Push $2
  EnumRegValue $1 HKCU "$0" 0
  EnumRegKey $2 HKCU "$0" 0
  ${If} $1 == ""
  ${AndIf} $2 == ""
    DeleteRegKey /ifempty HKCU "$0"
  ${EndIf}
  Pop $2
  Pop $1
  Pop $0
FunctionEnd

Function .onInit
  ${IfNot} ${RunningX64}
    MessageBox MB_ICONSTOP|MB_OK "${APP} needs 64-bit Windows." /SD IDOK
    Abort
  ${EndIf}
FunctionEnd

; The uninstaller deletes $INSTDIR\_internal as a whole: make sure that folder is ours by always installing into a
; folder named Tilewise (a user who picks C:\Users\me gets C:\Users\me\Tilewise). A hidden section that runs
; first, so it also covers /D=folder on the command line.
Section "-EnsureOwnFolder"
  StrCpy $0 "$INSTDIR" "" -9
  ${If} $0 != "\${APP}"
    StrCpy $INSTDIR "$INSTDIR\${APP}"
  ${EndIf}
SectionEnd

Section "${APP} (required)" SecApp
  SectionIn RO
  ; an earlier version's modules would otherwise linger next to the new ones
  ${If} ${FileExists} "$INSTDIR\${EXE_NAME}"
    RMDir /r "$INSTDIR\_internal"
  ${EndIf}
  SetOutPath "$INSTDIR"
  File /r "${BUNDLE_DIR}\*.*"
  WriteUninstaller "$INSTDIR\${UNINSTALLER}"

  CreateShortcut "$SMPROGRAMS\${APP}.lnk" "$INSTDIR\${EXE_NAME}" "" "$INSTDIR\${EXE_NAME}" 0 SW_SHOWNORMAL "" \
      "Segment medical images with nnU-Net models"

  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "${APP}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "${PUBLISHER}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\${EXE_NAME},0"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\${UNINSTALLER}"'
  WriteRegStr HKCU "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\${UNINSTALLER}" /S'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "EstimatedSize" ${INSTALL_SIZE_KB}
SectionEnd

Section "Desktop shortcut" SecDesktop
  CreateShortcut "$DESKTOP\${APP}.lnk" "$INSTDIR\${EXE_NAME}" "" "$INSTDIR\${EXE_NAME}" 0 SW_SHOWNORMAL "" \
      "Segment medical images with nnU-Net models"
SectionEnd

Section "Open with ${APP} for .nii, .nii.gz, .nrrd, .mha" SecOpenWith
  WriteRegStr HKCU "${APP_KEY}" "FriendlyAppName" "${APP}"
  WriteRegStr HKCU "${APP_KEY}\DefaultIcon" "" "$INSTDIR\${EXE_NAME},0"
  WriteRegStr HKCU "${APP_KEY}\shell\open\command" "" '"$INSTDIR\${EXE_NAME}" "%1"'
  WriteRegStr HKCU "${PROGID_KEY}" "" "Medical image volume"
  WriteRegStr HKCU "${PROGID_KEY}" "FriendlyTypeName" "Medical image volume"
  WriteRegStr HKCU "${PROGID_KEY}\DefaultIcon" "" "$INSTDIR\${EXE_NAME},0"
  WriteRegStr HKCU "${PROGID_KEY}\shell\open" "FriendlyAppName" "${APP}"
  WriteRegStr HKCU "${PROGID_KEY}\shell\open\command" "" '"$INSTDIR\${EXE_NAME}" "%1"'
  !insertmacro ADD_OPEN_WITH ".nii"
  !insertmacro ADD_OPEN_WITH ".gz"
  !insertmacro ADD_OPEN_WITH ".nrrd"
  !insertmacro ADD_OPEN_WITH ".mha"
  System::Call 'shell32::SHChangeNotify(i 0x08000000, i 0, p 0, p 0)' ; SHCNE_ASSOCCHANGED
SectionEnd

LangString DESC_SecApp ${LANG_ENGLISH} "The viewer, the command line (${CLI_EXE_NAME}), the demo model and a Start-menu shortcut. Runs on the CPU; GPU users can add CUDA torch later."
LangString DESC_SecDesktop ${LANG_ENGLISH} "A shortcut on the desktop."
LangString DESC_SecOpenWith ${LANG_ENGLISH} "Adds ${APP} to the Open with menu of these files (for .nii.gz: of .gz files). Does not change their default program."
!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecApp} $(DESC_SecApp)
  !insertmacro MUI_DESCRIPTION_TEXT ${SecDesktop} $(DESC_SecDesktop)
  !insertmacro MUI_DESCRIPTION_TEXT ${SecOpenWith} $(DESC_SecOpenWith)
!insertmacro MUI_FUNCTION_DESCRIPTION_END

Section "Uninstall"
  Delete "$SMPROGRAMS\${APP}.lnk"
  Delete "$DESKTOP\${APP}.lnk"

  DeleteRegKey HKCU "${APP_KEY}"
  DeleteRegKey HKCU "${PROGID_KEY}"
  !insertmacro REMOVE_OPEN_WITH ".nii"
  !insertmacro REMOVE_OPEN_WITH ".gz"
  !insertmacro REMOVE_OPEN_WITH ".nrrd"
  !insertmacro REMOVE_OPEN_WITH ".mha"
  System::Call 'shell32::SHChangeNotify(i 0x08000000, i 0, p 0, p 0)'
  DeleteRegKey HKCU "${UNINSTALL_KEY}"

  ; what the installer put into $INSTDIR: two launchers, _internal (the rest of the bundle), the uninstaller
  Delete "$INSTDIR\${EXE_NAME}"
  Delete "$INSTDIR\${CLI_EXE_NAME}"
  RMDir /r "$INSTDIR\_internal"
  Delete "$INSTDIR\${UNINSTALLER}"
  RMDir "$INSTDIR"
SectionEnd
