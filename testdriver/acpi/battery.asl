/*
 * A laptop's battery and AC adapter for QEMU guests of boards with `battery: true`
 * (testdriver/acpi/__init__.py compiles this with iasl; QEMU loads it with -acpitable).
 *
 * Linux's ACPI battery driver binds PNP0C0A and shows /sys/class/power_supply/BAT0 (type
 * Battery, scope not Device: the machine's own battery); its AC driver binds ACPI0003 as AC
 * (type Mains). Values are those of a 57 Wh ThinkPad pack, on AC and charging at 80 %: a
 * guest never sees a low battery, so nothing in it ever suspends or powers off over it.
 */
DefinitionBlock ("", "SSDT", 2, "CLUCTL", "BATTERY", 0x00000001)
{
    Scope (\_SB)
    {
        Device (AC)
        {
            Name (_HID, "ACPI0003")
            Name (_PCL, Package () { \_SB })
            Method (_STA, 0, NotSerialized) { Return (0x0F) }
            Method (_PSR, 0, NotSerialized) { Return (One) }  // on line
        }

        Device (BAT0)
        {
            Name (_HID, EisaId ("PNP0C0A"))
            Name (_UID, One)
            Name (_PCL, Package () { \_SB })
            // present, enabled, shown, functioning, battery present
            Method (_STA, 0, NotSerialized) { Return (0x1F) }

            Method (_BIF, 0, NotSerialized)
            {
                Return (Package (0x0D)
                {
                    Zero,        // power unit: mW / mWh
                    57000,       // design capacity (mWh)
                    55000,       // last full charge capacity (mWh)
                    One,         // technology: rechargeable
                    15440,       // design voltage (mV)
                    5700,        // design capacity of warning (10 %)
                    1710,        // design capacity of low (3 %)
                    100,         // granularity between low and warning
                    100,         // granularity between warning and full
                    "5B10W13975",  // model number
                    "00A1",      // serial number
                    "LION",      // battery type
                    "SMP"        // OEM information
                })
            }

            Method (_BST, 0, NotSerialized)
            {
                Return (Package (0x04)
                {
                    0x02,        // state: charging
                    20000,       // present rate (mW)
                    44000,       // remaining capacity (mWh): 80 % of the last full charge
                    16800        // present voltage (mV)
                })
            }
        }
    }
}
